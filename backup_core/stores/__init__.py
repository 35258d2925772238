"""Where archives live: archive names, the stores (a local folder, a remote), and retention."""
