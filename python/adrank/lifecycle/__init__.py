"""The lifecycle of the versions a server loads (DESIGN.md, Model repository and Rollout): version_loader
makes one version routable only once every check passed; manager keeps, per model, the versions its
policy and rollout want loaded, applies the rollout to the core's registry, drains what leaves it and
watches the repository."""
