"""Container runtimes started standalone for tests: `daemon` starts one (private
root, state, socket, net.d, CNI bin dir, mount namespace) and asks it over CRI;
`recorder` is the CNI plugin that records which network a sandbox got; `corpus`
materializes the net.d layouts of tests/integration/runtimes/corpus; and
`differential` compares the runtimes' answers with the model's prediction."""
