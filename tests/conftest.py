import os

# Before torch is imported: idle OpenMP threads sleep instead of spinning, which keeps
# CPU tests fast when the test process shares the cores with Flower and Ray processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
