using XenDisk.Xen;
using Tmds.Linux;

namespace XenDisk.Backend.ControlPlane;

internal static class XenStoreTransactions
{
    /// <summary>
    /// Conflicting transactions are retried (xs_transaction_end's EAGAIN). A conflict means another
    /// writer touched the same nodes meanwhile; after this many in a row something keeps rewriting
    /// them and giving up with an error is better than spinning.
    /// </summary>
    public const int MaxAttempts = 32;

    /// <summary>
    /// Runs <paramref name="body"/> in a transaction, retrying the whole body on EAGAIN. The body
    /// returns false to abort (nothing is written). Returns what the committed body returned.
    /// </summary>
    public static bool Run(IXenStore store, Func<XenStoreTransaction, bool> body)
    {
        for (int attempt = 1; ; attempt++)
        {
            XenStoreTransaction transaction = store.BeginTransaction();
            bool commit;
            try
            {
                commit = body(transaction);
            }
            catch (XenStoreException e) when (e.Errno == LibC.EAGAIN && attempt < MaxAttempts)
            {
                store.EndTransaction(transaction, abort: true);
                continue;
            }
            catch
            {
                store.EndTransaction(transaction, abort: true);
                throw;
            }

            if (!commit)
            {
                store.EndTransaction(transaction, abort: true);
                return false;
            }

            if (store.EndTransaction(transaction))
            {
                return true;
            }

            if (attempt >= MaxAttempts)
            {
                throw new XenStoreException("transaction_end", "(transaction)", LibC.EAGAIN);
            }
        }
    }
}
