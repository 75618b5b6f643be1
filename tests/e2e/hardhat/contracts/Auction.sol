// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// A small English auction: bids must rise, the outbid get their money back to withdraw.
contract Auction {
    address public immutable seller;
    address public highestBidder;
    uint256 public highestBid;
    mapping(address => uint256) public refunds;

    event Bid(address indexed bidder, uint256 amount);

    error BidTooLow(uint256 needed);

    constructor() {
        seller = msg.sender;
    }

    function bid() external payable {
        if (msg.value <= highestBid) revert BidTooLow(highestBid + 1);
        if (highestBidder != address(0)) refunds[highestBidder] += highestBid;
        highestBidder = msg.sender;
        highestBid = msg.value;
        emit Bid(msg.sender, msg.value);
    }

    function withdraw() external {
        uint256 amount = refunds[msg.sender];
        refunds[msg.sender] = 0;
        (bool ok, ) = msg.sender.call{value: amount}("");
        require(ok, "refund failed");
    }
}
