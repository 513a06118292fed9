"""The runtime policy: a declarative file each instance reconciles live (DESIGN section 5)."""
