// A dapp's Hardhat 3 project: its tests run on Lattice with `hardhat test --network
// lattice`, using the node's own dev accounts (`eth_accounts`), as they would on a local
// Hardhat node. solc-js from the repository's npm packages: no compiler download.
import path from "node:path";
import { fileURLToPath } from "node:url";

import hardhatEthers from "@nomicfoundation/hardhat-ethers";
import hardhatNodeTestRunner from "@nomicfoundation/hardhat-node-test-runner";

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = process.env.LATTICE_NODE_MODULES ?? path.join(here, "..", "..", "..", "node_modules");

export default {
  plugins: [hardhatEthers, hardhatNodeTestRunner],
  solidity: {
    version: "0.8.37",
    path: path.join(modules, "solc", "soljson.js"),
  },
  networks: {
    lattice: {
      type: "http",
      url: process.env.LATTICE_RPC ?? "http://127.0.0.1:8545",
      chainId: 27182,
    },
  },
};
