/* A real TFLite external delegate for the tests (tests/backends/test_accelerators.py).
 *
 * It implements the external-delegate ABI that both ai-edge-litert's and tflite-runtime's
 * `load_delegate(library, options)` call: tflite_plugin_create_delegate(keys, values, n,
 * report_error) and tflite_plugin_destroy_delegate(delegate). Its Prepare claims the nodes whose
 * builtin op code is listed in the `claim` option (default 34, PAD), each as its own partition,
 * and its kernel runs the claimed node with the runtime's own kernel (the registration's prepare
 * and invoke it read in Prepare). So the graph really runs through this library: the interpreter's
 * execution plan has the delegate's nodes in place of the claimed ones, and the results must still
 * equal the CPU's.
 *
 * Options (every value a string, as load_delegate passes them):
 *   record=PATH      append what happened to PATH, a line each: "option KEY=VALUE 0", "created
 *                    delegate 0", "prepare claimed N", "destroyed invokes N" (kernel invocations)
 *   claim=34,9       builtin op codes to claim (a node is claimed only when none of its inputs comes
 *                    from a node already claimed: one node per partition, no intermediate tensors)
 *   refuse=MESSAGE   create no delegate: report MESSAGE through report_error and return NULL
 *   fail_prepare=1   Prepare returns an error (a delegate that fails when the graph is applied)
 *   anything else    recorded only (as a real delegate's device or cache options would be)
 *
 * Only the leading fields of the TFLite structs, stable since TF 2.x, are declared here (from
 * tensorflow/lite/core/c/common.h). The registration handed to ReplaceNodeSubsetsWithDelegateKernels
 * is passed by value: it is padded with zeros so that a runtime whose TfLiteRegistration has more
 * fields reads zeros there (x86-64 and aarch64 pass such a struct in memory; not for 32-bit ARM).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int TfLiteStatus; /* kTfLiteOk = 0, kTfLiteError = 1 */
typedef struct { int size; int data[]; } TfLiteIntArray;

typedef struct TfLiteNode {
  TfLiteIntArray *inputs, *outputs, *intermediates, *temporaries;
  void *user_data, *builtin_data;
  const void *custom_initial_data;
  int custom_initial_data_size;
  void *delegate;
  char might_have_side_effect;
  char tail[64]; /* fields of newer runtimes: zero */
} TfLiteNode;

struct TfLiteContext;
typedef struct TfLiteRegistration {
  void *(*init)(struct TfLiteContext *, const char *, size_t);
  void (*free)(struct TfLiteContext *, void *);
  TfLiteStatus (*prepare)(struct TfLiteContext *, TfLiteNode *);
  TfLiteStatus (*invoke)(struct TfLiteContext *, TfLiteNode *);
  const char *(*profiling_string)(const struct TfLiteContext *, const TfLiteNode *);
  int32_t builtin_code;
  const char *custom_name;
  int version;
  void *registration_external;
  void *async_kernel;
  uint64_t inplace_operator;
  char tail[128]; /* fields of newer runtimes: zero */
} TfLiteRegistration;

typedef struct TfLiteDelegate {
  void *data_;
  TfLiteStatus (*Prepare)(struct TfLiteContext *, struct TfLiteDelegate *);
  void *CopyFromBufferHandle, *CopyToBufferHandle, *FreeBufferHandle;
  int64_t flags;
  void *opaque_delegate_builder;
  char tail[64];
} TfLiteDelegate;

typedef struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext *, TfLiteIntArray **);
  void *tensors;
  void *impl_;
  void *ResizeTensor;
  void (*ReportError)(struct TfLiteContext *, const char *, ...);
  void *AddTensors;
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext *, int, TfLiteNode **,
                                         TfLiteRegistration **);
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(struct TfLiteContext *, TfLiteRegistration,
                                                         const TfLiteIntArray *, TfLiteDelegate *);
} TfLiteContext;

typedef struct {
  TfLiteDelegate *delegate;
  TfLiteIntArray *nodes_to_replace, *input_tensors, *output_tensors;
} TfLiteDelegateParams;

enum { kBuiltinDelegate = 51, kMaxClaim = 16 };

typedef struct {
  char record[512];
  int claim[kMaxClaim], n_claim, fail_prepare;
  long invokes;
} Options;

typedef struct { /* one delegate kernel: the runtime's own node and kernel it stands for */
  Options *options;
  TfLiteNode node;
  TfLiteRegistration registration;
} Kernel;

static void record(const Options *o, const char *what, const char *text, long n) {
  if (!o->record[0]) return;
  FILE *f = fopen(o->record, "a");
  if (!f) return;
  fprintf(f, "%s %s %ld\n", what, text, n);
  fclose(f);
}

static void *kernel_init(TfLiteContext *context, const char *buffer, size_t length) {
  (void)length;
  const TfLiteDelegateParams *params = (const TfLiteDelegateParams *)buffer;
  if (params->nodes_to_replace->size != 1) return NULL;
  TfLiteNode *node;
  TfLiteRegistration *registration;
  if (context->GetNodeAndRegistration(context, params->nodes_to_replace->data[0], &node,
                                      &registration) != 0)
    return NULL;
  Kernel *k = calloc(1, sizeof *k);
  k->options = (Options *)params->delegate->data_;
  /* copies of the leading fields: the runtime may move its node array when it adds nodes */
  memcpy(&k->node, node, offsetof(TfLiteNode, tail));
  memcpy(&k->registration, registration, offsetof(TfLiteRegistration, registration_external));
  return k;
}

static void kernel_free(TfLiteContext *context, void *buffer) {
  (void)context;
  free(buffer);
}

static TfLiteStatus kernel_prepare(TfLiteContext *context, TfLiteNode *node) {
  Kernel *k = node->user_data;
  if (!k) return 1;
  return k->registration.prepare ? k->registration.prepare(context, &k->node) : 0;
}

static TfLiteStatus kernel_invoke(TfLiteContext *context, TfLiteNode *node) {
  Kernel *k = node->user_data;
  k->options->invokes++;
  return k->registration.invoke(context, &k->node);
}

static int claimed_code(const Options *o, int code) {
  for (int i = 0; i < o->n_claim; i++)
    if (o->claim[i] == code) return 1;
  return 0;
}

static TfLiteStatus delegate_prepare(TfLiteContext *context, TfLiteDelegate *delegate) {
  Options *o = delegate->data_;
  if (o->fail_prepare) {
    record(o, "prepare", "failing", 0);
    context->ReportError(context, "pass_delegate: fail_prepare was set");
    return 1;
  }
  TfLiteIntArray *plan;
  if (context->GetExecutionPlan(context, &plan) != 0) return 1;
  TfLiteIntArray *nodes = calloc(1, sizeof(int) * (plan->size + 1));
  int *made = calloc(context->tensors_size + 1, sizeof(int)); /* tensors written by claimed nodes */
  for (int i = 0; i < plan->size; i++) {
    TfLiteNode *node;
    TfLiteRegistration *registration;
    if (context->GetNodeAndRegistration(context, plan->data[i], &node, &registration) != 0) continue;
    if (!claimed_code(o, registration->builtin_code)) continue;
    int next_to_claimed = 0;
    for (int j = 0; j < node->inputs->size; j++)
      if (node->inputs->data[j] >= 0 && made[node->inputs->data[j]]) next_to_claimed = 1;
    if (next_to_claimed) continue;
    for (int j = 0; j < node->outputs->size; j++) made[node->outputs->data[j]] = 1;
    nodes->data[nodes->size++] = plan->data[i];
  }
  free(made);
  record(o, "prepare", "claimed", nodes->size);
  TfLiteRegistration kernel;
  memset(&kernel, 0, sizeof kernel);
  kernel.init = kernel_init;
  kernel.free = kernel_free;
  kernel.prepare = kernel_prepare;
  kernel.invoke = kernel_invoke;
  kernel.builtin_code = kBuiltinDelegate;
  kernel.custom_name = "inferd_pass_delegate";
  kernel.version = 1;
  TfLiteStatus status =
      nodes->size ? context->ReplaceNodeSubsetsWithDelegateKernels(context, kernel, nodes, delegate) : 0;
  free(nodes);
  return status;
}

TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t n,
                                              void (*report_error)(const char *)) {
  Options *o = calloc(1, sizeof *o);
  o->claim[0] = 34; /* PAD */
  o->n_claim = 1;
  for (size_t i = 0; i < n; i++) {
    if (!strcmp(keys[i], "record")) snprintf(o->record, sizeof o->record, "%s", values[i]);
  }
  for (size_t i = 0; i < n; i++) {
    char option[1024];
    snprintf(option, sizeof option, "%s=%s", keys[i], values[i]);
    record(o, "option", option, 0);
    if (!strcmp(keys[i], "refuse")) {
      if (report_error) report_error(values[i]);
      free(o);
      return NULL;
    } else if (!strcmp(keys[i], "fail_prepare")) {
      o->fail_prepare = atoi(values[i]);
    } else if (!strcmp(keys[i], "claim")) {
      o->n_claim = 0;
      for (char *s = values[i]; *s && o->n_claim < kMaxClaim;) {
        o->claim[o->n_claim++] = (int)strtol(s, &s, 10);
        while (*s == ',' || *s == ' ') s++;
      }
    } /* any other option (a device, a cache path...) is only recorded */
  }
  TfLiteDelegate *d = calloc(1, sizeof *d);
  d->data_ = o;
  d->Prepare = delegate_prepare;
  record(o, "created", "delegate", 0);
  return d;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate *d) {
  if (!d) return; /* the runtimes' Delegate.__del__ calls this even when create returned NULL */
  Options *o = d->data_;
  record(o, "destroyed", "invokes", o->invokes);
  free(o);
  free(d);
}
