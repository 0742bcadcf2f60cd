"""Online per-prompt difficulty (VADE): Beta posteriors updated from scored rollouts, a
Thompson sampler for informative prompts, and their durable store. No HTTP here: the routes are
in ``reward_server.service.difficulty``; rewards never read this state."""
