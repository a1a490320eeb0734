"""The janitor: one pass that keeps the disk from filling (`lipsyncd janitor`, run by lipsyncd-janitor.timer).

run strings the stages together: archive (copy, verify, then remove local videos), plan (what to delete,
read-only), delete (carrying it out without ever leaving the roots), alerts, report, spoolreport and metrics.
Importing this package must not import torch, cv2, librosa or numpy: the janitor runs when the disk is full
and must start fast and small.
"""

from daemon.janitor.run import PassResult, main, run_pass

__all__ = ["PassResult", "main", "run_pass"]
