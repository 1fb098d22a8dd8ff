"""Generated messages and stubs of the voxrelay.v1 contract (`make proto`)."""
