"""cniwarden's operator: cluster controller, node agent and doctor."""
