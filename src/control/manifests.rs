//! Kubernetes YAML documents on disk → typed objects, with file and line on errors. (helper "route+compile")
