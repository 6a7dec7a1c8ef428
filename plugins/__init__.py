"""Model adapters shipped with label-studio-ale (entry-point group `label_studio_ale.adapters`)."""
