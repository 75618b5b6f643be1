// The project's own tests, as it runs them against any network: node:test and ethers.
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";

import { network } from "hardhat";

describe("Auction", async () => {
  const { ethers } = await network.connect();
  const [seller, alice, bob] = await ethers.getSigners();
  let auction;

  before(async () => {
    auction = await ethers.deployContract("Auction", [], seller);
    await auction.waitForDeployment();
  });

  it("records the seller", async () => {
    assert.equal(await auction.seller(), seller.address);
  });

  it("takes a rising bid and emits it", async () => {
    const sent = await auction.connect(alice).bid({ value: ethers.parseEther("1") });
    const receipt = await sent.wait();
    assert.equal(receipt.status, 1);
    const [event] = receipt.logs.map((entry) => auction.interface.parseLog(entry));
    assert.equal(event.name, "Bid");
    assert.equal(event.args.bidder, alice.address);
    assert.equal(await auction.highestBidder(), alice.address);
  });

  it("refuses a bid that does not rise, with the custom error", async () => {
    await assert.rejects(
      auction.connect(bob).bid({ value: ethers.parseEther("1") }),
      (error) => error.message.includes("BidTooLow") || error.data !== undefined,
    );
  });

  it("lets the outbid withdraw their money", async () => {
    await (await auction.connect(bob).bid({ value: ethers.parseEther("2") })).wait();
    assert.equal(await auction.refunds(alice.address), ethers.parseEther("1"));
    const before = await ethers.provider.getBalance(alice.address);
    const receipt = await (await auction.connect(alice).withdraw()).wait();
    const after = await ethers.provider.getBalance(alice.address);
    const fee = receipt.gasUsed * receipt.gasPrice;
    assert.equal(after - before + fee, ethers.parseEther("1"));
    assert.equal(await auction.refunds(alice.address), 0n);
  });
});
