// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

contract Greeter {
    string public greeting;
    event Greeted(address indexed by, string greeting);

    constructor(string memory first) {
        greeting = first;
    }

    function greet(string calldata next) external {
        greeting = next;
        emit Greeted(msg.sender, next);
    }
}
