module github.com/csi-rbdj/csi-rbdj

go 1.26
