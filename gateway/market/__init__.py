"""The market's HTTP face: REST `/v1/jobs`, `/v1/nodes`, `/v1/models`, content blocks, and
the OpenAI-compatible `/v1/completions` and `/v1/chat/completions`.

- `service`: the market as the log tells it (`MarketService`, a follower of the market's
  topics: nodes, models, each job's lifecycle, deposit holds) and the jobs this gateway
  starts for its users (`JobService`: API keys, admission, signing, waiting for results);
- `routes`: the REST handlers over them; `openai`: the OpenAI-compatible ones.
"""

from gateway.market.routes import router
from gateway.market.service import FOLLOWED, HOLD_GRACE_MS, MarketService, new_api_key

__all__ = ["FOLLOWED", "HOLD_GRACE_MS", "MarketService", "new_api_key", "router"]
