"""The delivery artifacts without a cluster or a Docker engine: the image's Dockerfile,
the kind cluster and its dev add-ons, the kind script and the skaffold loop."""
