// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title JobMarket: deposits, provider stakes, API-key delegates and job settlement.
/// @notice Deployed in the genesis (no constructor): `settler`, `treasury` and `minStake` are
/// written into slots 0..2 by the genesis allocation, `unbondingSeconds` into slot 10. The settler is the verifier's account; it
/// is the only caller of `settle`, and each job settles at most once, so a duplicate result
/// can never pay twice.
contract JobMarket {
    address public settler; // slot 0
    address public treasury; // slot 1
    uint256 public minStake; // slot 2

    mapping(address => uint256) public deposits;
    /// @notice delegate (the address behind an API key) => the account whose deposit it spends
    mapping(address => address) public delegateOf;
    mapping(address => uint256) public stakes;
    mapping(address => uint256) public priceWeiPerHour;
    mapping(bytes32 => bool) public settled;
    uint256 public feesAccrued;
    /// @notice node => when its stake may be withdrawn (0: not leaving)
    mapping(address => uint256) public unbondingUntil; // slot 9
    uint256 public unbondingSeconds; // slot 10

    event Deposited(address indexed account, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);
    event DelegateAuthorised(address indexed account, address indexed delegate);
    event DelegateRevoked(address indexed account, address indexed delegate);
    event NodeRegistered(address indexed node, uint256 stake, uint256 priceWeiPerHour);
    event UnstakeRequested(address indexed node, uint256 stake, uint256 withdrawableAt);
    event StakeWithdrawn(address indexed node, uint256 amount);
    event Settled(
        bytes32 indexed jobId,
        address indexed requester,
        address indexed provider,
        uint256 paid,
        uint256 fee,
        uint256 refund,
        uint256 slashed
    );

    error NotSettler(address caller);
    error NotAuthorised(address signer, address requester);
    error AlreadySettled(bytes32 jobId);
    error InsufficientDeposit(uint256 available, uint256 required);
    error StakeTooLow(uint256 stake, uint256 required);
    error DelegateTaken(address delegate, address account);
    error NotYourDelegate(address delegate);
    error TransferFailed(address to, uint256 amount);
    error NothingStaked(address node);
    error NotUnbonding(address node);
    error StillUnbonding(uint256 withdrawableAt, uint256 now_);

    function deposit() external payable {
        deposits[msg.sender] += msg.value;
        emit Deposited(msg.sender, msg.value);
    }

    function withdraw(uint256 amount) external {
        uint256 available = deposits[msg.sender];
        if (available < amount) revert InsufficientDeposit(available, amount);
        deposits[msg.sender] = available - amount;
        emit Withdrawn(msg.sender, amount);
        _pay(msg.sender, amount);
    }

    /// @notice Let `delegate` (an API key's address) sign jobs paid from the caller's deposit.
    function authorise(address delegate) external {
        address current = delegateOf[delegate];
        if (current != address(0) && current != msg.sender) revert DelegateTaken(delegate, current);
        delegateOf[delegate] = msg.sender;
        emit DelegateAuthorised(msg.sender, delegate);
    }

    function revoke(address delegate) external {
        if (delegateOf[delegate] != msg.sender) revert NotYourDelegate(delegate);
        delete delegateOf[delegate];
        emit DelegateRevoked(msg.sender, delegate);
    }

    /// @notice Register (or top up and re-price) the caller as a compute node; a node that
    /// was leaving stays instead.
    function registerNode(uint256 price) external payable {
        uint256 stake = stakes[msg.sender] + msg.value;
        if (stake < minStake) revert StakeTooLow(stake, minStake);
        stakes[msg.sender] = stake;
        priceWeiPerHour[msg.sender] = price;
        delete unbondingUntil[msg.sender];
        emit NodeRegistered(msg.sender, stake, price);
    }

    /// @notice Leave: the stake becomes withdrawable `unbondingSeconds` from now. Until then
    /// it can still be slashed for results already given.
    function requestUnstake() external {
        uint256 stake = stakes[msg.sender];
        if (stake == 0) revert NothingStaked(msg.sender);
        uint256 at = block.timestamp + unbondingSeconds;
        unbondingUntil[msg.sender] = at;
        emit UnstakeRequested(msg.sender, stake, at);
    }

    /// @notice The whole stake, once the unbonding period has run out.
    function withdrawStake() external {
        uint256 at = unbondingUntil[msg.sender];
        if (at == 0) revert NotUnbonding(msg.sender);
        if (block.timestamp < at) revert StillUnbonding(at, block.timestamp);
        uint256 amount = stakes[msg.sender];
        delete stakes[msg.sender];
        delete unbondingUntil[msg.sender];
        delete priceWeiPerHour[msg.sender];
        emit StakeWithdrawn(msg.sender, amount);
        _pay(msg.sender, amount);
    }

    /// @notice Pay `paid` to the provider and `fee` to the treasury out of the requester's
    /// deposit (capped at what the deposit holds, the fee keeping its share), and move `slash`
    /// of the provider's stake (capped at the stake) to the treasury. `signer` signed the job
    /// request: the requester itself or a delegate it authorised.
    function settle(
        bytes32 jobId,
        address signer,
        address requester,
        address provider,
        uint256 paid,
        uint256 fee,
        uint256 refund,
        uint256 slash
    ) external {
        if (msg.sender != settler) revert NotSettler(msg.sender);
        if (settled[jobId]) revert AlreadySettled(jobId);
        if (signer != requester && delegateOf[signer] != requester) {
            revert NotAuthorised(signer, requester);
        }
        settled[jobId] = true;
        uint256 available = deposits[requester];
        uint256 charge = paid + fee;
        if (charge > available) {
            fee = (fee * available) / charge;
            paid = available - fee;
            charge = available;
        }
        deposits[requester] = available - charge;
        uint256 stake = stakes[provider];
        if (slash > stake) slash = stake;
        stakes[provider] = stake - slash;
        feesAccrued += fee + slash;
        emit Settled(jobId, requester, provider, paid, fee, refund, slash);
        if (paid > 0) _pay(provider, paid);
    }

    function withdrawFees() external {
        uint256 amount = feesAccrued;
        feesAccrued = 0;
        _pay(treasury, amount);
    }

    function _pay(address to, uint256 amount) private {
        (bool ok, ) = payable(to).call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }
}
