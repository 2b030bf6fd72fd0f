"""LightningModules (one per trainable stage) and their LightningDataModules."""
