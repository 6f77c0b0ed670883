/* What the shim answers by itself, byte for byte what node_plugin answers (VERSION and
 * the bare "about" call need no server). tests/integration/fastpath/test_shim.py checks
 * that this stays equal to node_plugin.versions / node_plugin.skel. */
#ifndef CNIWARDEN_SHIM_VERSIONS_H
#define CNIWARDEN_SHIM_VERSIONS_H

#define CNIWARDEN_CURRENT_VERSION "1.1.0"
#define CNIWARDEN_VERSION_REPLY                                                        \
	"{\n    \"cniVersion\": \"1.1.0\",\n    \"supportedVersions\": [\n"              \
	"        \"0.1.0\",\n        \"0.2.0\",\n        \"0.3.0\",\n        \"0.3.1\",\n" \
	"        \"0.4.0\",\n        \"1.0.0\",\n        \"1.1.0\"\n    ]\n}\n"
#define CNIWARDEN_ABOUT_FORMAT                                                         \
	"CNI %s plugin (cniwarden)\n"                                                  \
	"CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0\n"

#endif
