//! The custom resource types (group `sluice.dev`, version `v1alpha1`): Connector and DeadLetterQueue.
