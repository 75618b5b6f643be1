// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title ModelRegistry: names to content-addressed model manifests, with owners and versions.
/// @notice Deployed in the genesis. The first account to register a name owns it; each later
/// registration by the owner is a new version. A manifest is found by its CID in any
/// blockstore, so the registry holds only the name, the manifest CID and the model type.
contract ModelRegistry {
    struct Model {
        address owner;
        uint32 version;
        string manifestCid;
        string modelType;
    }

    mapping(bytes32 => Model) private models;

    event ModelRegistered(
        bytes32 indexed modelId,
        string name,
        string manifestCid,
        address indexed owner,
        uint32 version,
        string modelType
    );

    error NotOwner(address caller, address owner);
    error EmptyName();

    function register(
        string calldata name,
        string calldata manifestCid,
        string calldata modelType
    ) external returns (uint32 version) {
        if (bytes(name).length == 0) revert EmptyName();
        bytes32 id = keccak256(bytes(name));
        Model storage model = models[id];
        if (model.owner == address(0)) model.owner = msg.sender;
        else if (model.owner != msg.sender) revert NotOwner(msg.sender, model.owner);
        version = model.version + 1;
        model.version = version;
        model.manifestCid = manifestCid;
        model.modelType = modelType;
        emit ModelRegistered(id, name, manifestCid, msg.sender, version, modelType);
    }

    function get(
        string calldata name
    ) external view returns (address owner, uint32 version, string memory manifestCid, string memory modelType) {
        Model storage model = models[keccak256(bytes(name))];
        return (model.owner, model.version, model.manifestCid, model.modelType);
    }
}
