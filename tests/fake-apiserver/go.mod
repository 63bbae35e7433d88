module github.com/pod-pacemaker/pod-pacemaker/tests/fake-apiserver

go 1.26
