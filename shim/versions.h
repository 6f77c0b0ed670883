/* The CNI versions node_plugin supports; the shim answers VERSION with them without
 * contacting the server. tests/integration/fastpath/test_shim.py checks that this stays
 * equal to what the standalone Python plugins answer. */
#ifndef CNIWARDEN_SHIM_VERSIONS_H
#define CNIWARDEN_SHIM_VERSIONS_H

#define CNIWARDEN_CURRENT_VERSION "1.1.0"
#define CNIWARDEN_SUPPORTED_VERSIONS_JSON \
	"[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]"
#define CNIWARDEN_SUPPORTED_VERSIONS_TEXT "0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"

#endif
