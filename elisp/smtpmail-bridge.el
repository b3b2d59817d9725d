;;; smtpmail-bridge.el --- Non-blocking drop-in for smtpmail-send-it  -*- lexical-binding: t; -*-

;; Copyright (C) 2026 The smtpmail-bridge authors

;; Author: The smtpmail-bridge authors
;; Version: 0.1.0
;; Package-Requires: ((emacs "27.1"))
;; Keywords: mail
;; URL: https://example.invalid/smtpmail-bridge

;; This file is not part of GNU Emacs.

;; This program is free software; you can redistribute it and/or modify
;; it under the terms of the GNU General Public License as published by
;; the Free Software Foundation, either version 3 of the License, or
;; (at your option) any later version.

;; This program is distributed in the hope that it will be useful,
;; but WITHOUT ANY WARRANTY; without even the implied warranty of
;; MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
;; GNU General Public License for more details.

;; You should have received a copy of the GNU General Public License
;; along with this program.  If not, see <https://www.gnu.org/licenses/>.

;;; Commentary:

;; smtpmail freezes Emacs for the whole SMTP dialogue.  This package keeps
;; smtpmail's buffer preparation in Emacs (it runs `smtpmail-send-it'
;; itself up to the point where the message is ready) and hands the bytes
;; to a backend process, `smtpmail-bridge serve', which talks SMTP with
;; smtpmail's semantics, or queues the message in smtpmail's queue format.
;;
;; Setup:
;;
;;     (require 'smtpmail-bridge)
;;     (setq send-mail-function #'smtpmail-bridge-send-it)
;;
;; Your smtpmail-* settings and ~/.authinfo(.gpg) stay as they are:
;; credentials are looked up by Emacs (auth-source) when the backend asks.
;;
;; The wire format between Emacs and the backend is in docs/protocol.md:
;; one s-expression per line, plain data only, nothing is evaluated.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'smtpmail)
(require 'sendmail)
(require 'auth-source)
(require 'tabulated-list)

(defvar print-integers-as-characters)   ; Emacs 28+
(defvar smtpmail-address-buffer)        ; smtpmail's scratch buffer

(defgroup smtpmail-bridge nil
  "Send mail through the non-blocking smtpmail-bridge backend."
  :group 'smtpmail
  :prefix "smtpmail-bridge-")

(defcustom smtpmail-bridge-program '("smtpmail-bridge" "serve")
  "Command line that starts the backend: a program and its arguments."
  :type '(repeat string))

(defcustom smtpmail-bridge-async t
  "Non-nil means `smtpmail-bridge-send-it' returns at once.
A failed asynchronous send is queued and reported in the echo area
and the `*smtpmail-bridge*' buffer.  nil means wait for the server
and signal errors as `smtpmail-send-it' does."
  :type 'boolean)

(defcustom smtpmail-bridge-timeout 900
  "Seconds a synchronous send waits for the backend before giving up."
  :type 'number)

(defcustom smtpmail-bridge-wait-timeout 60
  "Default seconds `smtpmail-bridge-wait' waits for jobs in flight."
  :type 'number)

(defcustom smtpmail-bridge-inline-limit (* 1024 1024)
  "Messages up to this many bytes are sent inline as base64.
Larger ones are written to a temporary file whose name is sent,
so no huge line crosses the pipe."
  :type 'integer)

(define-error 'smtpmail-bridge-error "smtpmail-bridge")
(define-error 'smtpmail-bridge-protocol-error
  "smtpmail-bridge protocol error" 'smtpmail-bridge-error)

(defconst smtpmail-bridge-protocol-version 1
  "The protocol version this shim speaks (see docs/protocol.md).")

;;;; Internal state

(defvar smtpmail-bridge--process nil "The backend process, or nil.")
(defvar smtpmail-bridge--partial "" "Output received after the last newline.")
(defvar smtpmail-bridge--next-id 0 "Last request id used.")
(defvar smtpmail-bridge--jobs (make-hash-table :test #'eql)
  "Requests waiting for their final reply, by id.")
(defvar smtpmail-bridge--hello nil "The backend's hello plist.")
(defvar smtpmail-bridge--trace-started nil
  "Job ids whose trace buffer was already erased.")

(cl-defstruct (smtpmail-bridge--job (:constructor smtpmail-bridge--make-job))
  id op args on-success on-failure on-event
  file            ; temporary message file we own, or nil
  data            ; message bytes, kept until the backend says sent/queued
  done result error save-functions host port requeued)

;;;; Printing requests

(defun smtpmail-bridge--print (form)
  "Return FORM printed on one line as plain data for the backend."
  (let ((print-escape-newlines t)
        (print-escape-control-characters nil)
        (print-escape-nonascii nil)
        (print-escape-multibyte nil)
        (print-length nil)
        (print-level nil)
        (print-quoted t)
        (print-circle nil)
        (print-integers-as-characters nil))
    (prin1-to-string form)))

(defun smtpmail-bridge--log (format-string &rest args)
  "Append FORMAT-STRING formatted with ARGS to the `*smtpmail-bridge*' buffer."
  (with-current-buffer (get-buffer-create "*smtpmail-bridge*")
    (let ((inhibit-read-only t))
      (goto-char (point-max))
      (insert (format-time-string "%F %T ")
              (apply #'format format-string args) "\n"))))

;;;; The process

(defun smtpmail-bridge--live-p ()
  "Non-nil when the backend process is running."
  (and smtpmail-bridge--process (process-live-p smtpmail-bridge--process)))

(defun smtpmail-bridge--ensure-process ()
  "Start the backend unless it is running; return the process."
  (unless (smtpmail-bridge--live-p)
    (unless (and (car smtpmail-bridge-program)
                 (executable-find (car smtpmail-bridge-program)))
      (signal 'smtpmail-bridge-error
              (list (format "Cannot start the backend: %S not found (see `smtpmail-bridge-program')"
                            (car smtpmail-bridge-program)))))
    (setq smtpmail-bridge--partial ""
          smtpmail-bridge--hello nil
          smtpmail-bridge--process
          (make-process
           :name "smtpmail-bridge"
           :command smtpmail-bridge-program
           :coding 'utf-8-unix
           :connection-type 'pipe
           :noquery t
           :stderr (get-buffer-create " *smtpmail-bridge stderr*")
           :filter #'smtpmail-bridge--filter
           :sentinel #'smtpmail-bridge--sentinel)))
  smtpmail-bridge--process)

(defun smtpmail-bridge--update-query-flag ()
  "Make Emacs ask at exit only while a message is in flight."
  (when (smtpmail-bridge--live-p)
    (set-process-query-on-exit-flag
     smtpmail-bridge--process
     (cl-loop for job being the hash-values of smtpmail-bridge--jobs
              thereis (memq (smtpmail-bridge--job-op job) '(send queue flush))))))

(defun smtpmail-bridge--filter (_process output)
  "Handle OUTPUT from the backend: one s-expression per line."
  (let ((text (concat smtpmail-bridge--partial output))
        (start 0) nl)
    (while (setq nl (string-search "\n" text start))
      (let ((line (substring text start nl)))
        (setq start (1+ nl))
        (unless (string-empty-p line)
          (condition-case err
              (smtpmail-bridge--dispatch (car (read-from-string line)))
            (error (smtpmail-bridge--log "bad line from backend (%s): %s"
                                         (error-message-string err)
                                         (truncate-string-to-width line 200)))))))
    (setq smtpmail-bridge--partial (substring text start))))

(defun smtpmail-bridge--sentinel (process event)
  "Notice that the backend PROCESS exited (EVENT); hand in-flight mail back."
  (unless (process-live-p process)
    (when (eq process smtpmail-bridge--process)
      (setq smtpmail-bridge--process nil))
    (smtpmail-bridge--log "backend exited: %s" (string-trim event))
    (let (orphans)
      (maphash (lambda (_id job) (push job orphans)) smtpmail-bridge--jobs)
      (clrhash smtpmail-bridge--jobs)
      (dolist (job (sort orphans (lambda (a b) (< (smtpmail-bridge--job-id a)
                                                  (smtpmail-bridge--job-id b)))))
        (if (and (memq (smtpmail-bridge--job-op job) '(send queue))
                 (not (smtpmail-bridge--job-requeued job)))
            (smtpmail-bridge--requeue job)
          (smtpmail-bridge--finish
           job nil (list :kind 'backend
                         :message (format "the backend exited (%s)"
                                          (string-trim event)))))))))

(defun smtpmail-bridge--requeue (job)
  "Queue the message of JOB through a new backend: it must never be lost."
  (smtpmail-bridge--log "job %d: re-queueing its message through a new backend"
                        (smtpmail-bridge--job-id job))
  (let ((args (plist-put (copy-sequence (smtpmail-bridge--job-args job))
                         :queue-on-failure nil)))
    (setf (smtpmail-bridge--job-requeued job) t
          (smtpmail-bridge--job-op job) 'queue
          (smtpmail-bridge--job-args job) args)
    (smtpmail-bridge--submit job)))

(defun smtpmail-bridge--submit (job)
  "Give JOB a fresh id, register it and write its request."
  (let ((process (smtpmail-bridge--ensure-process))
        (id (cl-incf smtpmail-bridge--next-id)))
    (setf (smtpmail-bridge--job-id job) id)
    (puthash id job smtpmail-bridge--jobs)
    (smtpmail-bridge--update-query-flag)
    (process-send-string
     process
     (concat (smtpmail-bridge--print
              (cons (smtpmail-bridge--job-op job)
                    (cons :id (cons id (smtpmail-bridge--job-args job)))))
             "\n"))
    job))

(cl-defun smtpmail-bridge--request (op args &key on-success on-failure on-event
                                       file data)
  "Send request OP with plist ARGS; return the job.
ON-SUCCESS gets the reply plist, ON-FAILURE the error plist,
ON-EVENT each event plist.  FILE is a temporary file deleted when the
job ends; DATA is kept so the message survives a backend crash."
  (smtpmail-bridge--submit
   (smtpmail-bridge--make-job :op op :args args :on-success on-success
                              :on-failure on-failure :on-event on-event
                              :file file :data data)))

(defun smtpmail-bridge--finish (job result error)
  "End JOB with RESULT (success) or ERROR (failure plist)."
  (remhash (smtpmail-bridge--job-id job) smtpmail-bridge--jobs)
  (smtpmail-bridge--update-query-flag)
  (setq smtpmail-bridge--trace-started
        (delq (smtpmail-bridge--job-id job) smtpmail-bridge--trace-started))
  (setf (smtpmail-bridge--job-done job) t
        (smtpmail-bridge--job-result job) result
        (smtpmail-bridge--job-error job) error)
  (when-let ((file (smtpmail-bridge--job-file job)))
    (when (file-exists-p file)
      (delete-file file)))
  (when (and error (eq (plist-get error :kind) 'auth)
             (smtpmail-bridge--job-host job))
    (auth-source-forget+ :host (smtpmail-bridge--job-host job)
                         :port (smtpmail-bridge--job-port job)))
  (if error
      (when (smtpmail-bridge--job-on-failure job)
        (funcall (smtpmail-bridge--job-on-failure job) error job))
    (when (smtpmail-bridge--job-on-success job)
      (funcall (smtpmail-bridge--job-on-success job) result))))

(defun smtpmail-bridge--dispatch (form)
  "Act on one FORM read from the backend."
  (unless (consp form)
    (signal 'smtpmail-bridge-protocol-error (list "not a list" form)))
  (let* ((head (car form))
         (plist (cdr form))
         (job (gethash (plist-get plist :id) smtpmail-bridge--jobs)))
    (pcase head
      ('hello
       (setq smtpmail-bridge--hello plist)
       (unless (eql (plist-get plist :protocol) smtpmail-bridge-protocol-version)
         (smtpmail-bridge--log "backend speaks protocol %S, this shim %d"
                               (plist-get plist :protocol)
                               smtpmail-bridge-protocol-version)))
      ('ok (if job (smtpmail-bridge--finish job plist nil)
             (smtpmail-bridge--log "reply for unknown request %S" (plist-get plist :id))))
      ('error (if job (smtpmail-bridge--finish job nil plist)
                (smtpmail-bridge--log "backend error: %s" (plist-get plist :message))))
      ('event (when job (smtpmail-bridge--event job plist)))
      (_ (smtpmail-bridge--log "unknown message from backend: %S" head)))))

(defun smtpmail-bridge--event (job plist)
  "Handle event PLIST for JOB."
  (pcase (plist-get plist :type)
    ('credential-request
     ;; Out of the filter: auth-source may decrypt a file or prompt.
     (run-at-time 0 nil #'smtpmail-bridge--answer-credentials job plist))
    ('auth-ok
     (dolist (fn (smtpmail-bridge--job-save-functions job))
       (funcall fn))
     (setf (smtpmail-bridge--job-save-functions job) nil))
    ('trace (smtpmail-bridge--trace job plist))
    (_ (when (smtpmail-bridge--job-on-event job)
         (funcall (smtpmail-bridge--job-on-event job) plist)))))

;;;; Credentials

(defun smtpmail-bridge--answer-credentials (job plist)
  "Answer the credential-request PLIST of JOB from auth-source, as smtpmail."
  (let* ((host (plist-get plist :host))
         (port (plist-get plist :port))
         (user (plist-get plist :user))
         (ask (and (plist-get plist :required) (not noninteractive)))
         (auth-source-creation-prompts
          '((user . "SMTP user name for %h: ")
            (secret . "SMTP password for %u@%h: ")))
         answer)
    (setf (smtpmail-bridge--job-host job) host
          (smtpmail-bridge--job-port job) port)
    (condition-case err
        (let* ((info (car (auth-source-search :host host :port port :user user
                                              :max 1
                                              :require (and ask '(:user :secret))
                                              :create ask)))
               (login (plist-get info :user))
               (secret (plist-get info :secret)))
          (when (functionp secret) (setq secret (funcall secret)))
          (when (and login (not secret) (not noninteractive))
            (setq info (car (auth-source-search :max 1 :host host :port port
                                                :user user
                                                :require '(:user :secret)
                                                :create t))
                  secret (plist-get info :secret))
            (when (functionp secret) (setq secret (funcall secret))))
          (when (and ask (functionp (plist-get info :save-function)))
            (push (plist-get info :save-function)
                  (smtpmail-bridge--job-save-functions job)))
          (setq answer
                (if (and login secret)
                    (list :user login :secret secret
                          :mechanism (when-let ((m (plist-get info :smtp-auth)))
                                       (format "%s" m)))
                  (list :error
                        (format "no credentials for %s@%s:%s in auth-source%s"
                                (or user "*") host port
                                (if noninteractive " (batch Emacs cannot prompt)" ""))))))
      (error (setq answer (list :error (error-message-string err)))))
    (when (smtpmail-bridge--live-p)
      (smtpmail-bridge--request
       'credential (append (list :for (plist-get plist :cid)) answer)))))

;;;; Trace buffer

(defun smtpmail-bridge--trace (job plist)
  "Append the trace line in PLIST of JOB to smtpmail's trace buffer."
  (let ((id (smtpmail-bridge--job-id job))
        (line (plist-get plist :line)))
    (with-current-buffer (get-buffer-create
                          (format "*trace of SMTP session to %s*"
                                  (plist-get plist :host)))
      (unless (memq id smtpmail-bridge--trace-started)
        (push id smtpmail-bridge--trace-started)
        (erase-buffer))
      (goto-char (point-max))
      ;; The backend redacts; this is a second fence for AUTH payloads.
      (when (string-match "\\`\\(AUTH [A-Za-z0-9_-]+\\) " line)
        (setq line (concat (match-string 1 line) " <omitted>")))
      (insert line (if (equal (plist-get plist :dir) "*") "\n" "\r\n")))))

;;;; Variables and message preparation

;; Variables read by `smtpmail-send-it' and `smtpmail-via-smtp' in 28.2:
;;   used here, in Emacs, by `smtpmail-send-it' itself (it runs below):
;;     mail-header-separator mail-specify-envelope-from mail-envelope-from
;;     user-mail-address user-full-name mail-from-style mail-aliases
;;     mail-send-nonascii mail-mailer-swallows-blank-line mail-interactive
;;     smtpmail-code-conv-from sendmail-coding-system
;;     default-sendmail-coding-system
;;   passed to the backend with each request (`smtpmail-bridge--variables'):
;;     smtpmail-smtp-server smtpmail-smtp-service smtpmail-smtp-user
;;     smtpmail-stream-type smtpmail-local-domain smtpmail-sendto-domain
;;     smtpmail-debug-info smtpmail-debug-verb smtpmail-queue-mail
;;     smtpmail-queue-dir smtpmail-queue-index-file
;;     smtpmail-store-queue-variables
;;     smtpmail-servers-requiring-authorization smtpmail-retries
;;     smtpmail-auth-supported smtpmail-warn-about-unknown-extensions
;;     smtpmail-mail-address (flush only)
;;   and `auth-sources' stays in Emacs: credentials come from auth-source.

(defun smtpmail-bridge--variables (&optional mail-address)
  "The smtpmail variables as a plist for the backend.
MAIL-ADDRESS, when given, is sent as `smtpmail-mail-address'."
  (append
   (list :smtp-server smtpmail-smtp-server
         :smtp-service smtpmail-smtp-service
         :smtp-user smtpmail-smtp-user
         :stream-type smtpmail-stream-type
         :local-domain smtpmail-local-domain
         :sendto-domain smtpmail-sendto-domain
         :debug-info (and smtpmail-debug-info t)
         :debug-verb (and smtpmail-debug-verb t)
         :queue-mail (and smtpmail-queue-mail t)
         :queue-dir (expand-file-name smtpmail-queue-dir)
         :queue-index-file smtpmail-queue-index-file
         :store-queue-variables (and smtpmail-store-queue-variables t)
         :servers-requiring-authorization smtpmail-servers-requiring-authorization
         :retries smtpmail-retries
         :auth-supported smtpmail-auth-supported
         :warn-about-unknown-extensions
         (and smtpmail-warn-about-unknown-extensions t))
   (and mail-address (list :mail-address mail-address))))

(defun smtpmail-bridge-prepare ()
  "Prepare the current mail buffer exactly as `smtpmail-send-it' does.
Return (BYTES . SENDER): the encoded message with Bcc still present,
and the envelope sender smtpmail computed.  This runs
`smtpmail-send-it' itself (header separator, From, Message-Id, Date,
empty Subject, aliases, MIME headers, Fcc, RFC 2047, coding) and stops
it where it would deduce the recipients, before any network or queue."
  (let (result)
    (catch 'smtpmail-bridge--prepared
      (cl-letf (((symbol-function 'smtpmail-deduce-address-list)
                 (lambda (buffer _start _end)
                   (let ((text (with-current-buffer buffer
                                 (buffer-substring-no-properties
                                  (point-min) (point-max))))
                         (coding smtpmail-code-conv-from))
                     (setq result
                           (cons (if (multibyte-string-p text)
                                     (encode-coding-string
                                      text
                                      (if coding
                                          (coding-system-change-eol-conversion
                                           coding 'unix)
                                        'no-conversion))
                                   text)
                                 smtpmail-mail-address)))
                   (when (buffer-live-p smtpmail-address-buffer)
                     (kill-buffer smtpmail-address-buffer))
                   (throw 'smtpmail-bridge--prepared nil))))
        (smtpmail-send-it)))
    (or result (error "smtpmail-send-it did not reach its recipient step"))))

(defun smtpmail-bridge--message-args (bytes sender)
  "Request arguments carrying BYTES from SENDER; return (ARGS . FILE)."
  (let ((args (list :sender sender)) file)
    (if (<= (length bytes) smtpmail-bridge-inline-limit)
        (setq args (append args (list :data (base64-encode-string bytes t))))
      (setq file (make-temp-file "smtpmail-bridge-"))
      (let ((coding-system-for-write 'no-conversion))
        (write-region bytes nil file nil 'silent))
      (setq args (append args (list :file file))))
    (cons args file)))

;;;; Reporting

(defun smtpmail-bridge--describe-error (err)
  "A one-line description of the error plist ERR, with the server's text."
  (let ((reply (plist-get err :reply))
        (text (plist-get err :message)))
    (string-trim
     (replace-regexp-in-string
      "[\r\n]+" " "
      (if (and reply (not (string-search reply (or text ""))))
          (format "%s (server said: %s)" text reply)
        (or text reply "unknown error"))))))

(defun smtpmail-bridge--report-send (result)
  "Tell the user how the asynchronous send ended, given RESULT."
  (let ((status (plist-get result :status))
        (to (mapconcat #'identity (plist-get result :recipients) ", ")))
    (if (eq status 'sent)
        (progn (smtpmail-bridge--log "sent to %s" to)
               (message "smtpmail-bridge: sent to %s" to))
      (let* ((why (and (plist-get result :message)
                       (smtpmail-bridge--describe-error result)))
             (text
              (cond ((null why)
                     (format "message to %s queued as %s" to
                             (plist-get result :entry)))
                    ((eq (plist-get result :kind) 'permanent)
                     (format "the server REJECTED the message to %s permanently: %s; \
kept in the queue as %s" to why (plist-get result :entry)))
                    (t (format "sending to %s failed: %s; queued as %s" to why
                               (plist-get result :entry))))))
        (smtpmail-bridge--log "%s" text)
        (message "smtpmail-bridge: %s" text)))))

(defun smtpmail-bridge--report-failure (err &optional job)
  "Tell the user that an asynchronous JOB failed with ERR.
A message that is neither sent nor queued is saved to a file, so
that it is never lost."
  (let ((text (smtpmail-bridge--describe-error err))
        (data (and job (smtpmail-bridge--job-data job))))
    (when data
      (let ((file (make-temp-file "smtpmail-bridge-unsent-"))
            (coding-system-for-write 'no-conversion))
        (write-region data nil file nil 'silent)
        (setq text (format "%s; the message was saved in %s" text file))))
    (smtpmail-bridge--log "failed: %s" text)
    (message "smtpmail-bridge: sending failed: %s" text)))

(defun smtpmail-bridge--wait-job (job timeout)
  "Wait up to TIMEOUT seconds for JOB to end; non-nil when it did."
  (let ((deadline (+ (float-time) timeout)))
    (while (and (not (smtpmail-bridge--job-done job))
                (< (float-time) deadline))
      (accept-process-output nil 0.05))
    (smtpmail-bridge--job-done job)))

;;;; Entry points

;;;###autoload
(defun smtpmail-bridge-send-it ()
  "Send the current mail buffer like `smtpmail-send-it', without blocking.
Use it as `send-mail-function'.  With `smtpmail-bridge-async' it
returns at once and reports the outcome later; with
`smtpmail-queue-mail' the message is queued by the backend."
  (let* ((queue (and smtpmail-queue-mail t))
         (vars (smtpmail-bridge--variables))
         (prepared (smtpmail-bridge-prepare))
         (msg (smtpmail-bridge--message-args (car prepared) (cdr prepared)))
         (async smtpmail-bridge-async)
         (args (append (car msg)
                       (list :vars vars)
                       (and async (not queue) (list :queue-on-failure t))))
         (job (smtpmail-bridge--request
               (if queue 'queue 'send) args
               :file (cdr msg) :data (car prepared)
               :on-success (and async #'smtpmail-bridge--report-send)
               :on-failure (and async #'smtpmail-bridge--report-failure))))
    (unless async
      (unless (smtpmail-bridge--wait-job job smtpmail-bridge-timeout)
        (signal 'smtpmail-bridge-error
                (list "no answer from the backend" smtpmail-bridge-timeout)))
      (let ((err (smtpmail-bridge--job-error job))
            (result (smtpmail-bridge--job-result job)))
        (cond (err (error "Sending failed: %s" (smtpmail-bridge--describe-error err)))
              ((and (not queue) (not (eq (plist-get result :status) 'sent)))
               (error "Sending failed: %s; the message was queued as %s"
                      (if (plist-get result :message)
                          (smtpmail-bridge--describe-error result)
                        "the backend exited")
                      (plist-get result :entry))))))
    nil))

(defun smtpmail-bridge--flush-sender ()
  "Return the envelope sender `smtpmail-send-queued-mail' would use."
  (if mail-specify-envelope-from
      (let ((from (mail-envelope-from)))
        (and (stringp from) from))
    user-mail-address))

;;;###autoload
(defun smtpmail-bridge-send-queued-mail ()
  "Send the queued mail asynchronously, like `smtpmail-send-queued-mail'.
Progress is shown in the echo area; the outcome is also logged in
the `*smtpmail-bridge*' buffer."
  (interactive)
  (smtpmail-bridge--request
   'flush (list :vars (smtpmail-bridge--variables (smtpmail-bridge--flush-sender)))
   :on-event (lambda (ev)
               (when (eq (plist-get ev :type) 'progress)
                 (message "smtpmail-bridge: sending queued mail %d/%d (%s)"
                          (plist-get ev :done) (plist-get ev :total)
                          (plist-get ev :recipient))))
   :on-success
   (lambda (r)
     (dolist (f (plist-get r :failures))
       (smtpmail-bridge--log "queued %s: %s (%s)" (plist-get f :entry-id)
                             (plist-get f :error) (plist-get f :state)))
     (let ((text (format "sent %d queued message(s), %d failed"
                         (length (plist-get r :sent))
                         (length (plist-get r :failures)))))
       (smtpmail-bridge--log "flush: %s" text)
       (message "smtpmail-bridge: %s" text)))
   :on-failure #'smtpmail-bridge--report-failure)
  nil)

;;;###autoload
(defun smtpmail-bridge-wait (&optional timeout)
  "Wait until no send, queue or flush is in flight, at most TIMEOUT seconds.
TIMEOUT defaults to `smtpmail-bridge-wait-timeout'.  Return non-nil
when every job has finished."
  (let ((deadline (+ (float-time) (or timeout smtpmail-bridge-wait-timeout))))
    (while (and (smtpmail-bridge--busy-p)
                (< (float-time) deadline))
      (accept-process-output nil 0.05))
    (not (smtpmail-bridge--busy-p))))

(defun smtpmail-bridge--busy-p ()
  "Non-nil while a send, queue or flush job waits for its reply."
  (cl-loop for job being the hash-values of smtpmail-bridge--jobs
           thereis (memq (smtpmail-bridge--job-op job) '(send queue flush))))

(defun smtpmail-bridge-call (op args &optional timeout)
  "Run request OP with plist ARGS synchronously; return the reply plist.
Signal `smtpmail-bridge-error' on an error reply or after TIMEOUT
seconds (default `smtpmail-bridge-wait-timeout')."
  (let ((job (smtpmail-bridge--request op args)))
    (unless (smtpmail-bridge--wait-job job (or timeout smtpmail-bridge-wait-timeout))
      (signal 'smtpmail-bridge-error (list "no answer from the backend" op)))
    (when-let ((err (smtpmail-bridge--job-error job)))
      (signal 'smtpmail-bridge-error (list (smtpmail-bridge--describe-error err))))
    (smtpmail-bridge--job-result job)))

;;;; The queue buffer

(defvar smtpmail-bridge-queue-mode-map
  (let ((map (make-sparse-keymap)))
    (define-key map (kbd "RET") #'smtpmail-bridge-queue-show)
    (define-key map "v" #'smtpmail-bridge-queue-show)
    (define-key map "r" #'smtpmail-bridge-queue-retry)
    (define-key map "d" #'smtpmail-bridge-queue-drop)
    (define-key map "x" #'smtpmail-bridge-send-queued-mail)
    map)
  "Keymap for `smtpmail-bridge-queue-mode'.")

(define-derived-mode smtpmail-bridge-queue-mode tabulated-list-mode
  "SMTP-Queue"
  "Major mode listing the queued mail of smtpmail-bridge.
\\{smtpmail-bridge-queue-mode-map}"
  (setq tabulated-list-format [("Entry" 28 t) ("State" 12 t)
                               ("Recipients" 40 t) ("Size" 8 t)])
  (setq tabulated-list-sort-key nil)
  (add-hook 'tabulated-list-revert-hook #'smtpmail-bridge--queue-refresh nil t)
  (tabulated-list-init-header))

(defun smtpmail-bridge--entry-field (entry &rest keys)
  "The first of KEYS present in the queue ENTRY plist."
  (cl-loop for k in keys for v = (plist-get entry k) when v return v))

(defun smtpmail-bridge--queue-refresh ()
  "Fill the queue buffer from the backend's list."
  (let ((reply (smtpmail-bridge-call 'list (list :vars (smtpmail-bridge--variables)))))
    (setq tabulated-list-entries
          (mapcar
           (lambda (e)
             (let ((id (format "%s" (smtpmail-bridge--entry-field e :id :name :entry-id))))
               (list id
                     (vector id
                             (format "%s" (or (smtpmail-bridge--entry-field e :state) "queued"))
                             (mapconcat (lambda (r) (format "%s" r))
                                        (smtpmail-bridge--entry-field e :recipients) ", ")
                             (format "%s" (or (smtpmail-bridge--entry-field e :size) ""))))))
           (plist-get reply :entries)))))

;;;###autoload
(defun smtpmail-bridge-list-queue ()
  "List the queued mail; show, retry or drop entries from there."
  (interactive)
  (pop-to-buffer
   (with-current-buffer (get-buffer-create "*smtpmail-bridge queue*")
     (smtpmail-bridge-queue-mode)
     (smtpmail-bridge--queue-refresh)
     (tabulated-list-print)
     (current-buffer))))

(defun smtpmail-bridge--queue-entry-at-point ()
  "The queue entry id on this line."
  (or (tabulated-list-get-id) (user-error "No queue entry on this line")))

(defun smtpmail-bridge-queue-show ()
  "Show the queued message on this line."
  (interactive)
  (let* ((id (smtpmail-bridge--queue-entry-at-point))
         (entry (plist-get (smtpmail-bridge-call
                            'show (list :entry id :vars (smtpmail-bridge--variables)))
                           :entry))
         (file (smtpmail-bridge--entry-field entry :path :data-path :file)))
    (pop-to-buffer
     (with-current-buffer (get-buffer-create (format "*queued mail %s*" id))
       (let ((inhibit-read-only t))
         (erase-buffer)
         (when file (insert-file-contents-literally file)))
       (view-mode 1)
       (current-buffer)))))

(defun smtpmail-bridge-queue-retry ()
  "Mark the queued message on this line for another attempt."
  (interactive)
  (let ((id (smtpmail-bridge--queue-entry-at-point)))
    (smtpmail-bridge-call 'retry (list :entry id :vars (smtpmail-bridge--variables)))
    (revert-buffer)))

(defun smtpmail-bridge-queue-drop ()
  "Delete the queued message on this line, after asking."
  (interactive)
  (let ((id (smtpmail-bridge--queue-entry-at-point)))
    (when (yes-or-no-p (format "Delete queued message %s? " id))
      (smtpmail-bridge-call 'drop (list :entry id :vars (smtpmail-bridge--variables)))
      (revert-buffer))))

(provide 'smtpmail-bridge)
;;; smtpmail-bridge.el ends here
