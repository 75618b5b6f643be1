// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {IInferenceConsumer} from "./InferenceOracle.sol";

interface IInferenceOracle {
    function request(
        string calldata model,
        bytes calldata input,
        uint64 timeoutSeconds,
        uint32 callbackGas
    ) external payable returns (uint256 requestId);
}

/// @title ReviewBoard: an example contract that calls a model. Each posted review is classified
/// by a text-classification model through the InferenceOracle; the verified label and its score
/// arrive by callback in a later block and are kept on chain beside the review.
/// @notice Whoever posts pays the job (the value sent is its maximum price); what the job did not
/// cost comes back to this contract and is credited to the poster, who withdraws it.
contract ReviewBoard is IInferenceConsumer {
    enum Status {
        None,
        Pending,
        Classified,
        Refunded,
        Unreadable
    }

    struct Review {
        address author;
        Status status;
        uint16 scoreBps;
        string text;
        string label;
    }

    IInferenceOracle public constant ORACLE = IInferenceOracle(0x4c00000000000000000000000000000000000003);
    uint32 public constant CALLBACK_GAS = 300_000;

    string public model;
    uint64 public timeoutSeconds;
    mapping(uint256 => Review) public reviews; // by the oracle's request id
    mapping(address => uint256) public refunds;
    uint256 public reviewCount;
    /// What the oracle sent back and no author has been credited with yet.
    uint256 private unassigned;

    event ReviewPosted(uint256 indexed requestId, address indexed author, string text);
    event ReviewClassified(uint256 indexed requestId, string label, uint16 scoreBps);
    event ReviewRefunded(uint256 indexed requestId);

    error NotOracle(address caller);
    error UnknownRequest(uint256 requestId);

    constructor(string memory model_, uint64 timeoutSeconds_) {
        model = model_;
        timeoutSeconds = timeoutSeconds_;
    }

    /// @notice Post a review; the value sent pays its classification.
    function post(string calldata text) external payable returns (uint256 requestId) {
        requestId = ORACLE.request{value: msg.value}(
            model,
            bytes.concat('{"input":', _jsonString(bytes(text)), "}"),
            timeoutSeconds,
            CALLBACK_GAS
        );
        reviews[requestId] = Review(msg.sender, Status.Pending, 0, text, "");
        reviewCount += 1;
        emit ReviewPosted(requestId, msg.sender, text);
    }

    /// @notice The classifier's answer: `abi.encode(string label, uint256 scoreBps)`, the
    /// likeliest label of the text and its probability in basis points.
    function onInference(uint256 requestId, bool ok, bytes calldata output) external {
        if (msg.sender != address(ORACLE)) revert NotOracle(msg.sender);
        Review storage review = reviews[requestId];
        if (review.status != Status.Pending) revert UnknownRequest(requestId);
        refunds[review.author] += unassigned;
        unassigned = 0;
        if (!ok) {
            review.status = Status.Refunded;
            emit ReviewRefunded(requestId);
            return;
        }
        // Never revert here: the credit above must stay with this review's author.
        try this.decodeLabel(output) returns (string memory label, uint16 scoreBps) {
            review.status = Status.Classified;
            review.label = label;
            review.scoreBps = scoreBps;
            emit ReviewClassified(requestId, label, scoreBps);
        } catch {
            review.status = Status.Unreadable;
        }
    }

    /// @notice `abi.decode` of a classifier's answer (external, so that a malformed one is
    /// caught by the caller rather than reverting the callback).
    function decodeLabel(bytes calldata output) external pure returns (string memory label, uint16 scoreBps) {
        uint256 score;
        (label, score) = abi.decode(output, (string, uint256));
        scoreBps = uint16(score > 10_000 ? 10_000 : score);
    }

    function labelOf(uint256 requestId) external view returns (Status status, string memory label, uint16 scoreBps) {
        Review storage review = reviews[requestId];
        return (review.status, review.label, review.scoreBps);
    }

    function withdrawRefund() external {
        uint256 amount = refunds[msg.sender];
        refunds[msg.sender] = 0;
        (bool ok, ) = payable(msg.sender).call{value: amount}("");
        require(ok, "transfer failed");
    }

    /// The unspent price: the oracle sends it just before calling back, and the callback
    /// credits it to the review's author.
    receive() external payable {
        unassigned += msg.value;
    }

    /// A JSON string literal of `text`: quotes, backslashes and control characters escaped.
    function _jsonString(bytes memory text) private pure returns (bytes memory out) {
        bytes memory hexDigits = "0123456789abcdef";
        out = new bytes(text.length * 6 + 2);
        uint256 n = 0;
        out[n++] = '"';
        for (uint256 i = 0; i < text.length; i++) {
            bytes1 c = text[i];
            if (c == '"' || c == "\\") {
                out[n++] = "\\";
                out[n++] = c;
            } else if (uint8(c) < 0x20) {
                out[n++] = "\\";
                out[n++] = "u";
                out[n++] = "0";
                out[n++] = "0";
                out[n++] = hexDigits[uint8(c) >> 4];
                out[n++] = hexDigits[uint8(c) & 0x0f];
            } else {
                out[n++] = c;
            }
        }
        out[n++] = '"';
        assembly {
            mstore(out, n)
        }
    }
}
