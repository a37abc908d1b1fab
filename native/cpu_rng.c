/* cpu_rng.c: runs of the shared Philox stream on the CPU. Blocks are computed in batches, word
 * by word (structure of arrays), so that gcc vectorises the rounds and Box-Muller; element j of a
 * run is element base + j of the stream, exactly as dmath.h's df_rand_at / df_randn_at. */
#include <string.h>
#include "cpu.h"

#define BATCH 64 /* Philox blocks per batch */

/* words of blocks b0 .. b0 + nb - 1 (nb <= BATCH): round by round over all blocks, so each
   round is one vectorised loop */
static void blocks(uint64_t seed, uint64_t stream, uint64_t b0, int nb, uint32_t w[4][BATCH])
{
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int i = 0; i < nb; i++) {
    uint64_t b = b0 + (uint64_t)i;
    w[0][i] = (uint32_t)b; w[1][i] = (uint32_t)(b >> 32);
    w[2][i] = (uint32_t)stream; w[3][i] = (uint32_t)(stream >> 32);
  }
  for (int round = 0; round < 10; round++) {
    for (int i = 0; i < nb; i++) df_philox_round(&w[0][i], &w[1][i], &w[2][i], &w[3][i], k0, k1);
    df_philox_bump(&k0, &k1);
  }
}

static void run(uint64_t seed, uint64_t stream, uint64_t base, int64_t m, float *out, int normal)
{
  uint32_t w[4][BATCH];
  float z[4][BATCH];
  uint64_t first = base >> 2, last = (base + (uint64_t)m - 1) >> 2;
  if (m <= 0) return;
  for (uint64_t b0 = first; b0 <= last; b0 += BATCH) {
    int nb = last - b0 + 1 < BATCH ? (int)(last - b0 + 1) : BATCH;
    blocks(seed, stream, b0, nb, w);
    if (normal) {
      for (int i = 0; i < nb; i++) {
        df_box_muller(w[0][i], w[1][i], &z[0][i], &z[1][i]);
        df_box_muller(w[2][i], w[3][i], &z[2][i], &z[3][i]);
      }
    } else {
      for (int i = 0; i < nb; i++)
        for (int l = 0; l < 4; l++) z[l][i] = df_u01(w[l][i]);
    }
    /* element j of the run is word l of block i: blocks lo .. hi - 1 lie wholly inside the run
       and are copied without tests (a 4-way interleave gcc vectorises), the partial ones at its
       ends word by word */
    int64_t j0 = (int64_t)(b0 * 4) - (int64_t)base; /* j of block 0, word 0 */
    int lo = 0, hi = nb;
    while (lo < nb && j0 + 4 * (int64_t)lo < 0) lo++;
    while (hi > lo && j0 + 4 * (int64_t)hi > m) hi--;
    for (int i = lo; i < hi; i++)
      for (int l = 0; l < 4; l++) out[j0 + 4 * i + l] = z[l][i];
    for (int i = 0; i < nb; i++) {
      if (i >= lo && i < hi) continue;
      for (int l = 0; l < 4; l++) {
        int64_t j = j0 + 4 * (int64_t)i + l;
        if (j >= 0 && j < m) out[j] = z[l][i];
      }
    }
  }
}

void cpu_uniform_run(uint64_t seed, uint64_t stream, uint64_t base, int64_t m, float *out)
{
  run(seed, stream, base, m, out, 0);
}

void cpu_normal_run(uint64_t seed, uint64_t stream, uint64_t base, int64_t m, float *out)
{
  run(seed, stream, base, m, out, 1);
}
