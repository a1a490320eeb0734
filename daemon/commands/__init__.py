"""One-shot commands of the `lipsyncd` CLI: status, doctor, render, demo, retry, submit."""
