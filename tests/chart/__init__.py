"""The Helm charts (charts/rendezvous and its Redis dependency charts/redis), proven with
the real Helm engine and the real Kubernetes API schemas; no cluster runs here."""
