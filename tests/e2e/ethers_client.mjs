// An ethers v6 client against a Lattice devnet: read, sign and send, wait for the receipt,
// read it back. Prints one JSON line with what it saw; exits non-zero on any failure.
import { JsonRpcProvider, Wallet, parseEther } from "ethers";

const [url, key, to] = process.argv.slice(2);
const provider = new JsonRpcProvider(url, undefined, { staticNetwork: true, pollingInterval: 100 });
const wallet = new Wallet(key, provider);
const network = await provider.getNetwork();
const before = await provider.getBalance(to);
const response = await wallet.sendTransaction({ to, value: parseEther("0.25") });
const receipt = await response.wait(1, 60_000);
const after = await provider.getBalance(to);
const fetched = await provider.getTransactionReceipt(response.hash);
const block = await provider.getBlock(receipt.blockNumber);
console.log(JSON.stringify({
  chainId: network.chainId.toString(),
  status: receipt.status,
  hash: response.hash,
  sameReceipt: fetched.hash === response.hash && fetched.blockNumber === receipt.blockNumber,
  delta: (after - before).toString(),
  inBlock: block.transactions.includes(response.hash),
}));
