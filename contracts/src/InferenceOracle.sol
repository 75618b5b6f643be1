// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @notice What a contract implements to be called back with a model's answer.
interface IInferenceConsumer {
    /// @param requestId the id `InferenceOracle.request` returned
    /// @param ok true: `output` is the verified answer; false: the request was refunded
    /// (nobody answered by the deadline, or no answer passed verification) and `output` is empty
    /// @param output the answer, ABI-encoded by the model's task (see docs/market.md)
    function onInference(uint256 requestId, bool ok, bytes calldata output) external;
}

interface IModelRegistry {
    function get(
        string calldata name
    ) external view returns (address owner, uint32 version, string memory manifestCid, string memory modelType);
}

/// @title InferenceOracle: contracts ask the compute market for inference and are called back.
/// @notice Deployed in the genesis (no constructor): `settler` and `treasury` are written into
/// slots 0 and 1 by the genesis allocation. A request escrows its value as the job's maximum
/// price and names the model's current manifest (read from the ModelRegistry now, so the job
/// is fixed at request time). The market runs and verifies the job; the settler (the verifier's
/// account) then calls `fulfil` with the verified output, which pays the node and the fee out of
/// the escrow, refunds the rest and calls the requester back, or `refund`, which returns the
/// whole escrow. Nobody can keep an escrow past the deadline: after it, anyone may `reclaim` an
/// unanswered request for its requester. Payments to an address that refuses them are kept as
/// a credit it withdraws itself, so no requester or node can block a settlement.
contract InferenceOracle {
    struct Request {
        address requester;
        uint64 deadline;
        uint32 callbackGas;
        bool open;
        uint256 maxPrice;
        /// keccak256(abi.encode(keccak256(manifestCid), keccak256(input))): what was asked
        bytes32 digest;
    }

    IModelRegistry public constant REGISTRY = IModelRegistry(0x4c00000000000000000000000000000000000002);
    uint256 public constant MAX_INPUT_BYTES = 16384;
    uint64 public constant MIN_TIMEOUT = 10;
    /// After the deadline, the settler still has this long before anyone may reclaim: an
    /// answer made in time reaches the ledger a few blocks later.
    uint64 public constant RECLAIM_GRACE = 600;
    uint64 public constant MAX_TIMEOUT = 86400;
    uint32 public constant MAX_CALLBACK_GAS = 2_000_000;

    address public settler; // slot 0
    address public treasury; // slot 1
    uint256 public requestCount; // slot 2
    uint256 public feesAccrued; // slot 3
    mapping(uint256 => Request) public requests; // slot 4
    mapping(address => uint256) public credits; // slot 5

    event InferenceRequested(
        uint256 indexed requestId,
        address indexed requester,
        string model,
        string manifestCid,
        bytes input,
        uint256 maxPrice,
        uint64 requestedAt,
        uint64 deadline,
        uint32 callbackGas
    );
    event InferenceFulfilled(
        uint256 indexed requestId,
        bytes32 indexed settlementId,
        address indexed provider,
        uint256 paid,
        uint256 fee,
        uint256 refund,
        bool callbackOk
    );
    event InferenceRefunded(uint256 indexed requestId, bytes32 indexed settlementId, uint256 amount, bool callbackOk);
    event Credited(address indexed account, uint256 amount);

    error NoPayment();
    error InputSize(uint256 size, uint256 limit);
    error BadTimeout(uint64 timeoutSeconds, uint64 min, uint64 max);
    error CallbackGasTooHigh(uint32 callbackGas, uint32 limit);
    error UnknownModel(string model);
    error NotSettler(address caller);
    error NotOpen(uint256 requestId);
    error WrongJob(uint256 requestId);
    error WrongSplit(uint256 requestId, uint256 maxPrice);
    error DeadlineNotPassed(uint256 requestId, uint64 deadline);
    error NotEnoughGasForCallback(uint256 left, uint256 callbackGas);
    error NothingToWithdraw(address account);
    error TransferFailed(address to, uint256 amount);

    /// @notice Ask `model` (a ModelRegistry name) to answer `input` (the job's input document,
    /// JSON as `POST /v1/jobs` takes it) by `timeoutSeconds` from now, paying at most the value
    /// sent. The answer comes to the caller's `onInference` with `callbackGas` gas.
    function request(
        string calldata model,
        bytes calldata input,
        uint64 timeoutSeconds,
        uint32 callbackGas
    ) external payable returns (uint256 requestId) {
        if (msg.value == 0) revert NoPayment();
        if (input.length == 0 || input.length > MAX_INPUT_BYTES) revert InputSize(input.length, MAX_INPUT_BYTES);
        if (timeoutSeconds < MIN_TIMEOUT || timeoutSeconds > MAX_TIMEOUT) {
            revert BadTimeout(timeoutSeconds, MIN_TIMEOUT, MAX_TIMEOUT);
        }
        if (callbackGas > MAX_CALLBACK_GAS) revert CallbackGasTooHigh(callbackGas, MAX_CALLBACK_GAS);
        (, uint32 version, string memory manifestCid, ) = REGISTRY.get(model);
        if (version == 0) revert UnknownModel(model);
        requestId = ++requestCount;
        uint64 deadline = uint64(block.timestamp) + timeoutSeconds;
        requests[requestId] = Request(
            msg.sender,
            deadline,
            callbackGas,
            true,
            msg.value,
            keccak256(abi.encode(keccak256(bytes(manifestCid)), keccak256(input)))
        );
        emit InferenceRequested(
            requestId,
            msg.sender,
            model,
            manifestCid,
            input,
            msg.value,
            uint64(block.timestamp),
            deadline,
            callbackGas
        );
    }

    /// @notice The settler delivers a verified answer: `paid` to the node, `fee` to the
    /// network, `refund` back to the requester (the three add up to the escrow), then the
    /// requester's callback. `digest` must be the request's: an answer to another model or
    /// another input is refused.
    function fulfil(
        uint256 requestId,
        bytes32 settlementId,
        address provider,
        uint256 paid,
        uint256 fee,
        uint256 refundWei,
        bytes32 digest,
        bytes calldata output
    ) external {
        if (msg.sender != settler) revert NotSettler(msg.sender);
        Request storage r = requests[requestId];
        if (!r.open) revert NotOpen(requestId);
        if (r.digest != digest) revert WrongJob(requestId);
        if (paid + fee + refundWei != r.maxPrice) revert WrongSplit(requestId, r.maxPrice);
        r.open = false;
        feesAccrued += fee;
        _send(provider, paid);
        _send(r.requester, refundWei);
        bool ok = _callBack(r, requestId, true, output);
        emit InferenceFulfilled(requestId, settlementId, provider, paid, fee, refundWei, ok);
    }

    /// @notice The settler returns the whole escrow (`amount`, which must be it): the job
    /// expired, failed or was rejected.
    function refund(uint256 requestId, bytes32 settlementId, uint256 amount) external {
        if (msg.sender != settler) revert NotSettler(msg.sender);
        if (amount != requests[requestId].maxPrice) revert WrongSplit(requestId, requests[requestId].maxPrice);
        _refund(requestId, settlementId);
    }

    /// @notice Anyone returns the escrow of a request still unanswered `RECLAIM_GRACE` after
    /// its deadline (the market down, or no settlement for it).
    function reclaim(uint256 requestId) external {
        Request storage r = requests[requestId];
        uint64 after_ = r.deadline + RECLAIM_GRACE;
        if (block.timestamp <= after_) revert DeadlineNotPassed(requestId, after_);
        _refund(requestId, bytes32(0));
    }

    function withdrawCredit() external {
        uint256 amount = credits[msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        credits[msg.sender] = 0;
        (bool ok, ) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert TransferFailed(msg.sender, amount);
    }

    function withdrawFees() external {
        uint256 amount = feesAccrued;
        feesAccrued = 0;
        (bool ok, ) = payable(treasury).call{value: amount}("");
        if (!ok) revert TransferFailed(treasury, amount);
    }

    function _refund(uint256 requestId, bytes32 settlementId) private {
        Request storage r = requests[requestId];
        if (!r.open) revert NotOpen(requestId);
        r.open = false;
        _send(r.requester, r.maxPrice);
        bool ok = _callBack(r, requestId, false, "");
        emit InferenceRefunded(requestId, settlementId, r.maxPrice, ok);
    }

    /// A push that cannot fail the settlement: what the receiver refuses becomes its credit.
    /// (In assembly: no return data is copied, so a receiver cannot make the copy cost the
    /// settlement its gas.)
    function _send(address to, uint256 amount) private {
        if (amount == 0) return;
        bool ok;
        assembly {
            ok := call(50000, to, amount, 0, 0, 0, 0)
        }
        if (!ok) {
            credits[to] += amount;
            emit Credited(to, amount);
        }
    }

    /// The callback runs last (the request is closed and paid out before it) with the gas the
    /// requester asked for; whether it reverts is recorded, and changes nothing here.
    function _callBack(Request storage r, uint256 requestId, bool ok, bytes memory output) private returns (bool called) {
        uint256 gasWanted = r.callbackGas;
        // A caller cannot starve the callback: 63/64 of what is left must cover it (EIP-150).
        if ((gasleft() * 63) / 64 < gasWanted + 10_000) revert NotEnoughGasForCallback(gasleft(), gasWanted);
        address to = r.requester;
        if (to.code.length == 0) return false;
        bytes memory data = abi.encodeCall(IInferenceConsumer.onInference, (requestId, ok, output));
        assembly {
            called := call(gasWanted, to, 0, add(data, 32), mload(data), 0, 0)
        }
    }
}
