"""Trained models shipped with mpsearch, named `pretrained:<name>` in a study's baseline.checkpoint; a
model card <name>.md beside each says how it was made."""
