"""Pure array and integer helpers shared by models, losses and tools."""
