"""Pure torch math: losses and estimators as functions of tensors. Imports torch only."""
