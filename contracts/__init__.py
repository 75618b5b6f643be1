"""Solidity contracts, their committed artifacts and the build script."""
