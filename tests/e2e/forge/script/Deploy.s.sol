// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {Greeter} from "../src/Greeter.sol";

/// The cheatcodes this script uses (forge-std's `Vm`, declared here: no dependencies).
interface Vm {
    function envUint(string calldata name) external returns (uint256);
    function startBroadcast(uint256 privateKey) external;
    function stopBroadcast() external;
}

contract Deploy {
    Vm constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    function run() external returns (Greeter greeter) {
        vm.startBroadcast(vm.envUint("DEPLOYER_KEY"));
        greeter = new Greeter("hello");
        greeter.greet("hello, lattice");
        vm.stopBroadcast();
    }
}
