"""Tests of daemon/inbox/."""
