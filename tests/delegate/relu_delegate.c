/* A tiny external TFLite delegate for the tests: it takes every float32 RELU of the graph.
 *
 * It exists so that the tests can run a real delegate partition through LiteRT's external
 * delegate interface (tflite_plugin_create_delegate), as Edge TPU or NPU delegates do: chained
 * RELUs become one partition whose inner tensors are never written. RELU is idempotent, so every
 * output of a partition of chained RELUs is relu(its input); that is all a kernel computes.
 * Partitions with more than one input are refused (the tests' models have none).
 *
 * The structs below are prefixes of, or equal to, those of tensorflow/lite/core/c/common.h, whose
 * field order is kept stable for delegates built apart from the runtime. Option: claim=relu (the
 * only accepted value; any other key or value makes creation fail, to test option passing).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
enum { kTfLiteFloat32 = 1, kBuiltinRelu = 19 };

typedef struct { int size; int data[]; } TfLiteIntArray;
typedef struct { float scale; int32_t zero_point; } TfLiteQuantizationParams;
typedef struct { int type; void* params; } TfLiteQuantization;

typedef struct TfLiteTensor {
  int type;
  void* data;
  TfLiteIntArray* dims;
  TfLiteQuantizationParams params;
  int allocation_type;
  size_t bytes;
  const void* allocation;
  const char* name;
  struct TfLiteDelegate* delegate;
  int buffer_handle;
  bool data_is_stale;
  bool is_variable;
  TfLiteQuantization quantization;
  void* sparsity;
  const TfLiteIntArray* dims_signature;
} TfLiteTensor;

typedef struct TfLiteNode {
  TfLiteIntArray* inputs;
  TfLiteIntArray* outputs;
  TfLiteIntArray* intermediates;
  TfLiteIntArray* temporaries;
  void* user_data;
  void* builtin_data;
  const void* custom_initial_data;
  int custom_initial_data_size;
  struct TfLiteDelegate* delegate;
  bool might_have_side_effect;
} TfLiteNode;

struct TfLiteRegistration;
struct TfLiteDelegate;

typedef struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext*, TfLiteIntArray**);
  TfLiteTensor* tensors;
  void* impl_;
  void* ResizeTensor;
  void (*ReportError)(struct TfLiteContext*, const char*, ...);
  void* AddTensors;
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext*, int, TfLiteNode**, struct TfLiteRegistration**);
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(struct TfLiteContext*, struct TfLiteRegistration,
                                                        const TfLiteIntArray*, struct TfLiteDelegate*);
} TfLiteContext;

typedef struct TfLiteRegistration {
  void* (*init)(TfLiteContext*, const char*, size_t);
  void (*free)(TfLiteContext*, void*);
  TfLiteStatus (*prepare)(TfLiteContext*, TfLiteNode*);
  TfLiteStatus (*invoke)(TfLiteContext*, TfLiteNode*);
  const char* (*profiling_string)(const TfLiteContext*, const TfLiteNode*);
  int32_t builtin_code;
  const char* custom_name;
  int version;
  void* registration_external;
  void* async_kernel;
  uint64_t inplace_operator;
} TfLiteRegistration;

typedef struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(TfLiteContext*, struct TfLiteDelegate*);
  void* CopyFromBufferHandle;
  void* CopyToBufferHandle;
  void* FreeBufferHandle;
  int64_t flags;
  void* opaque_delegate_builder;
} TfLiteDelegate;

static TfLiteStatus kernel_prepare(TfLiteContext* context, TfLiteNode* node) {
  if (node->inputs->size != 1) {
    context->ReportError(context, "relu delegate: a partition with %d inputs", node->inputs->size);
    return kTfLiteError;
  }
  return kTfLiteOk;
}

static TfLiteStatus kernel_invoke(TfLiteContext* context, TfLiteNode* node) {
  const TfLiteTensor* in = &context->tensors[node->inputs->data[0]];
  const float* x = (const float*)in->data;
  for (int k = 0; k < node->outputs->size; ++k) {
    TfLiteTensor* out = &context->tensors[node->outputs->data[k]];
    if (out->bytes != in->bytes) return kTfLiteError;
    float* y = (float*)out->data;
    for (size_t i = 0; i < in->bytes / sizeof(float); ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
  }
  return kTfLiteOk;
}

static TfLiteStatus delegate_prepare(TfLiteContext* context, TfLiteDelegate* delegate) {
  TfLiteIntArray* plan;
  if (context->GetExecutionPlan(context, &plan) != kTfLiteOk) return kTfLiteError;
  TfLiteIntArray* claimed = malloc(sizeof(int) * (plan->size + 1));
  claimed->size = 0;
  for (int i = 0; i < plan->size; ++i) {
    TfLiteNode* node;
    TfLiteRegistration* reg;
    if (context->GetNodeAndRegistration(context, plan->data[i], &node, &reg) != kTfLiteOk) continue;
    if (reg->builtin_code == kBuiltinRelu && context->tensors[node->inputs->data[0]].type == kTfLiteFloat32)
      claimed->data[claimed->size++] = plan->data[i];
  }
  TfLiteRegistration kernel;
  memset(&kernel, 0, sizeof kernel);
  kernel.prepare = kernel_prepare;
  kernel.invoke = kernel_invoke;
  kernel.custom_name = "qbench_test_relu_delegate";
  kernel.version = 1;
  TfLiteStatus status = context->ReplaceNodeSubsetsWithDelegateKernels(context, kernel, claimed, delegate);
  free(claimed);
  return status;
}

TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t count,
                                              void (*report_error)(const char*)) {
  for (size_t i = 0; i < count; ++i) {
    if (strcmp(keys[i], "claim") != 0 || strcmp(values[i], "relu") != 0) {
      if (report_error) report_error("relu delegate: the only option is claim=relu");
      return NULL;
    }
  }
  TfLiteDelegate* delegate = calloc(1, sizeof(TfLiteDelegate));
  delegate->Prepare = delegate_prepare;
  return delegate;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) { free(delegate); }
