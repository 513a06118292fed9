"""`python -m loadtest.scaleout`: the scale-out deployment (a Redis, N `rendezvous serve`
instances, nginx with `ip_hash` in front), loaded by the locust suite, once with one
instance and once with N, and a report (markdown and PNG plots) of what it did.

See loadtest/README.md ("Scale-out runner").
"""
