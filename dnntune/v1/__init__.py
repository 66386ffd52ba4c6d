"""Generated from proto/dnntune/v1/dnntune.proto by `make proto`: do not edit."""
