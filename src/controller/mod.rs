//! The operator's reconcilers, one module per resource.
