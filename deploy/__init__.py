"""How to run Lattice: the `lattice` CLI, the devnet supervisor and deployment files."""
