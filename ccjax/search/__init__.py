"""Learned elimination orders: the vertex game, a policy network and MCTS."""
