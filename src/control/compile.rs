//! Pure compiler from Kubernetes objects to a route snapshot. (helper "route+compile")
