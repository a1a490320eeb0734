"""Tests of pipeline/: media, face, sync score and each engine."""
