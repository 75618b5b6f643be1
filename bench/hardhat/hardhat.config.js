// Hardhat 3 as a benchmark peer: `hardhat node` with its default development accounts
// (the same mnemonic as Lattice's devnet genesis). Started by bench/bench_rpc.py.
export default {};
