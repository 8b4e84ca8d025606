"""The RQ side of the cluster benchmark: one trivial job."""


def square(x):
    return x * x
