"""Tests of daemon/web/ (lipsyncd web)."""
