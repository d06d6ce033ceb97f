"""Container images built and run with podman (scripts/images.sh): the ``images`` tier."""
