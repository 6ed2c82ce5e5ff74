// llama_rlkv_version: identifies the library as rlkv-edge's build of llama.cpp.
#include "llama-rlkv.h"

#ifndef RLKV_EDGE_VERSION
#define RLKV_EDGE_VERSION "unknown"
#endif
#ifndef RLKV_LLAMA_CPP_COMMIT
#define RLKV_LLAMA_CPP_COMMIT "unknown"
#endif

const char * llama_rlkv_version(void) {
    return "rlkv-edge " RLKV_EDGE_VERSION " llama.cpp " RLKV_LLAMA_CPP_COMMIT;
}
