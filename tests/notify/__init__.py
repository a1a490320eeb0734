"""Tests of daemon/notify/."""
